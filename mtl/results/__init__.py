"""What the runs produced: the results tables of `mtl report`, its figures, and the published
numbers beside them."""
