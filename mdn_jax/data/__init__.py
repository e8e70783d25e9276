"""Data for training: document sources, tokenizers, sequence packing and the grain input pipeline."""

from mdn_jax.data.packing import PackIterDataset
from mdn_jax.data.pipeline import DataPipeline, make_pipeline
from mdn_jax.data.sources import load_source, split_source
from mdn_jax.data.tokenizers import get_tokenizer

__all__ = ["DataPipeline", "PackIterDataset", "get_tokenizer", "load_source", "make_pipeline", "split_source"]
