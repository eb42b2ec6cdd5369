"""Task names and queues: the contract between the web front end (which sends tasks by name and never
imports the worker code paths that load TensorFlow) and the worker."""

RECOMMEND = "recsys.recommend"
RECOMMEND_BATCH = "recsys.recommend_batch"
CUSTOMERS = "recsys.customers"
SIMILAR = "recsys.similar"
TRAIN = "recsys.train"

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
# What a worker that serves and trains consumes (`celery worker -Q`).
ALL_QUEUES = f"{INFERENCE_QUEUE},{TRAINING_QUEUE}"

# Redis key the worker writes on every model load: {"model_version", "customers": [...], ...}.
CUSTOMERS_KEY = "recsys:customers"
# How many customer ids the worker publishes there (GET /customers?limit= is capped by it).
PUBLISHED_CUSTOMERS = 1000
