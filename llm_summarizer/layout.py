"""The names of the files this project writes, in one place: renaming one output file is one line here.

A run's output directory (`output.dir`, default outputs/<run_name>/):

    checkpoint-N/            complete checkpoints (published by rename from .staging/, see training.checkpoints)
    .staging/                a checkpoint being written; cleared at the next start
    .lock                    held by the run that is using the directory
    config.yaml              the resolved config of the run
    base_metrics.json        ROUGE of the untrained model (a resumed run reuses it)
    eval_predictions/        every generated validation summary per evaluation (base.jsonl, step-N.jsonl,
                             references.jsonl)
    rouge_samples.jsonl      a few examples per evaluation, for reading
    data_cache/              tokenized splits, by content
    tracking.json            the tracker run ids a resumed run continues
    report.md, plots/        the training report

A model directory (`output.model_dir`, an export's target): the weights and tokenizer under the names transformers
and PEFT give them, and

    config.yaml              the config the model was trained with (what `summarize` and `evaluate` rebuild)
    metrics.json             ROUGE before and after, training figures (contracts.RunMetrics)
    run_info.json            the environment and model facts of the run
    README.md                the model card
    export_info.json         an export's record (format, base, checks)
    gguf_conversion.json     a GGUF source's conversion record

An evaluation's output folder: predictions.jsonl, predictions_base.jsonl, metrics.json, eval_settings.json,
report.md, plots/. A tune study's folder: summary.json, best_config.yaml. Every folder written for users holds
.llm_summarizer.json (what it is and what it holds, see paths.py).
"""

# -- every folder this project writes for users ----------------------------------------------------------------
OWNER_FILE = ".llm_summarizer.json"

# -- default folders, relative to the working directory (a setting or flag names another) ----------------------
OUTPUTS_DIR = "outputs"  # output.dir: outputs/<run_name>/; tune.dir: outputs/<run_name>-tune/; bench results
FINE_TUNED_DIR = "fine_tuned"  # output.model_dir: fine_tuned/<run_name>/
MODEL_CACHE_DIR = "data/models"  # model.cache_dir: random:<shape> builds, converted GGUF files, registry models
TUNE_SUFFIX = "-tune"  # a tune study's folder: outputs/<run_name>-tune/ (each trial's: trial-NNN/{outputs,fine_tuned})
BENCH_DIR = "bench"  # the bench's result files: outputs/bench/<time>-<model>-<data>.json
BENCH_WORK_SUFFIX = ".runs"  # the bench's work folder, beside its result file: <result>.runs/
EVALUATIONS_DIR = "evaluations"  # an evaluation's folder: evaluations/<model>/<split>/

# -- a run's output directory ---------------------------------------------------------------------------------
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
BASE_METRICS_FILE = "base_metrics.json"
PREDICTIONS_DIR = "eval_predictions"
REFERENCES_FILE = "references.jsonl"  # in eval_predictions/: the references' own statistics against their documents
SAMPLES_FILE = "rouge_samples.jsonl"
GRPO_COMPLETIONS_FILE = "grpo_completions.jsonl"  # GRPO: sampled completions with their reward parts
DATA_CACHE_DIR = "data_cache"
TRACKING_FILE = "tracking.json"
CHECKPOINT_MANIFEST = "checkpoint_manifest.json"

# -- a model directory ----------------------------------------------------------------------------------------
METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run_info.json"
MODEL_CARD = "README.md"
EXPORT_INFO = "export_info.json"
GGUF_CONVERSION_FILE = "gguf_conversion.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SHARD_PATTERNS = ("model-*.safetensors", "pytorch_model-*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
RECORDS = (CONFIG_FILE, METRICS_FILE, RUN_INFO_FILE)  # what an export carries over from the model it reads

# -- an evaluation's folder -----------------------------------------------------------------------------------
PREDICTIONS = "predictions.jsonl"
BASE_PREDICTIONS = "predictions_base.jsonl"
EVAL_SETTINGS = "eval_settings.json"

# -- reports (a run's output directory, an evaluation's folder) ----------------------------------------------
REPORT = "report.md"
PLOTS_DIR = "plots"
CURVES_PNG = "training_curves.png"
ROUGE_PNG = "rouge_base_vs_finetuned.png"
LENGTHS_PNG = "summary_lengths.png"
COVERAGE_PNG = "coverage_density.png"

# -- a tune study's folder ------------------------------------------------------------------------------------
SUMMARY_JSON = "summary.json"
TRIALS_CSV = "trials.csv"
STUDY_DB = "study.db"
BEST_CONFIG = "best_config.yaml"
