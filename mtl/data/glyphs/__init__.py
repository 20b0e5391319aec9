"""The built-in procedural dataset: glyph families drawn from strokes, split by family or class."""
