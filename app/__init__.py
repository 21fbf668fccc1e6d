"""Park Investment Registry: an industrial park's investment projects, enterprises and targets."""
