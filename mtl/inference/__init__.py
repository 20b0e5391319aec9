"""Using a trained model on your own images: adapt to a support set, predict, the saved classifier."""
