"""Hugging Face `transformers` model directories, in two layers: rename rules, model sources and the adapter
contract (rules.py, source.py, adapter.py: below the objectives, which point to them), and the export and
import commands (export.py, importer.py: above the checkpoint format). Import the submodules directly."""
