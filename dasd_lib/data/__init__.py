"""Data: the embedded multilingual benchmark (generator), loaders into one caption table,
and the views notebook 00 shows. See dataset/README.md for the layouts."""
from .errors import DataError, DataFileNotFoundError
from .languages import (EN_STYLES, LANGS, MT_STYLES, NATIVE_STYLES, TARGET_LANGS, CaptionError,
                        content_forms, content_inventory, english_caption, native_caption,
                        parse_english, translate)
from .loaders import (SPLITS, VARIANTS, load_corpus, load_images, load_manifest, load_release,
                      long_captions, token_lower_bound, validate_table, write_release_layout)
from .stats import (LABEL_COLUMNS, SampleGrid, caption_stats, content_labels, content_oracle_recall,
                    held_out_overlap, sample_grid, style_frequencies, token_coverage)
from .synthetic import (COLUMNS, GENERATOR_VERSION, build_rows, build_scenes, config_hash,
                        corpus_dir, generate_corpus, render_scene)
from .world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Obj, Scene

__all__ = [
    "BACKGROUNDS", "COLOURS", "COLUMNS", "CaptionError", "DataError", "DataFileNotFoundError",
    "EN_STYLES", "GENERATOR_VERSION", "LABEL_COLUMNS", "LANGS", "MT_STYLES", "NATIVE_STYLES", "Obj",
    "POSITIONS", "SHAPES", "SIZES", "SPLITS", "SampleGrid", "Scene", "TARGET_LANGS", "VARIANTS",
    "build_rows", "build_scenes", "caption_stats", "config_hash", "content_forms",
    "content_inventory", "content_labels", "content_oracle_recall", "held_out_overlap", "corpus_dir", "english_caption", "generate_corpus",
    "load_corpus", "load_images", "load_manifest", "load_release", "long_captions", "native_caption",
    "parse_english", "render_scene", "sample_grid", "style_frequencies", "token_coverage", "token_lower_bound",
    "translate", "validate_table", "write_release_layout",
]
