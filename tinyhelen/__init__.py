"""tinyhelen: everything the entry scripts import and nobody runs.

The models (model_llama.py, model_mamba.py, model_common.py), the loop (trainer.py) and the stage
scripts (train.py, finetune_glue.py, instruct.py, curriculum.py, sample.py, evaluate.py, export.py,
inherit.py) sit at the repository root, where a reader starts. This package holds what they share:

    config        the one config system: Python files and typed --key=value flags, checked before compute
    machine       device, precision, threads and the process group
    atomic        the one atomic writer (temp file, fsync, rename) and the crash-safe log append
    runlock       one writer per run folder
    checkpoint    ckpt.pt: write, read (weights_only), build the model it describes
    runs          load_run: the one way a stage opens a run folder, a ckpt.pt or a transformers folder
    metrics       metrics.jsonl, the loss plot, one way to save a figure, the matmul peak for MFU
    sampling      temperature, top-k and top-p
    scoring       per-document and per-window losses (the curriculum, the judge's perplexity)
    interop       transformers folders in and out;  interop_gguf: the GGUF file llama.cpp runs
    pretrained    a pretrained Llama (GGUF or transformers folder) imported as a run of this engine
    glue          Leaner-Glue: encoding, the sequence classifier, batches, GLUE's metrics
    glue_report   tables, gaps and charts over fine-tuning sweeps
    instruct_data instruction sets: converters, batches, the held-out leak check
    judge         the LLM judge;  judge_report: its agreement statistics, model-free measures, report
    answer_scores each answer alone under an imported LLM: fluency, relevance, expected rubric grades
    answer_validity  contrast sets with a known right order, each measure's accuracy on them
    llm/          the one LLM client: OpenAI-compatible chat, the embedded llama.cpp server, the cache

Nothing here imports an entry script or a study (tests/test_layout.py checks it, with import cycles).
"""
