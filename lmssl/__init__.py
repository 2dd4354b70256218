"""lmssl: BERT, GPT, ELECTRA and SimCSE pretraining from one transformer codebase."""
__version__ = "0.1.0"
