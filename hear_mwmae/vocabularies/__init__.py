"""Label vocabularies shipped as package data (see README.md here)."""
