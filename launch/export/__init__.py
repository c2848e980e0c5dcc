"""Export and serving: portable copies of a trained model (isic-export), each checked for parity."""
