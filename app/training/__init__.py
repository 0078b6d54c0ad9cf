"""Fine-tuning on captioned images: options (``config``), data (``captions``),
the run (``trainer``) and its loss log (``losslog``)."""
