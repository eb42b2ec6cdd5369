"""Task names and queues: the contract between the web front end (which sends tasks by name and never
imports the worker code paths that load TensorFlow) and the worker."""

import re

RECOMMEND = "recsys.recommend"
RECOMMEND_BATCH = "recsys.recommend_batch"
CUSTOMERS = "recsys.customers"
SIMILAR = "recsys.similar"
RATED = "recsys.rated"
TRAIN = "recsys.train"
MODELS = "recsys.models"
PUBLISH = "recsys.publish"
FEEDBACK = "recsys.feedback"

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
# What a worker that serves and trains consumes (`celery worker -Q`).
ALL_QUEUES = f"{INFERENCE_QUEUE},{TRAINING_QUEUE}"

# Redis key the worker writes on every model load: {"model_version", "customers": [...], ...}.
CUSTOMERS_KEY = "recsys:customers"
# Redis stream of live feedback (tasks/feedback.py): every worker folds it in before serving.
FEEDBACK_STREAM = "recsys:feedback"
# How many customer ids the worker publishes there (GET /customers?limit= is capped by it).
PUBLISHED_CUSTOMERS = 1000

# The state a training task reports while it runs (its meta: ml.train's {"stage", "epoch", "epochs"}).
PROGRESS_STATE = "PROGRESS"

# Identifier rules, checked on both sides (the web answers 400 before a task is sent; the worker
# fails invalid_input for a task sent by other means). Use with fullmatch.
CUSTOMER_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
CUSTOMER_ID_RE = re.compile(CUSTOMER_ID_PATTERN)
# product ids come from the data (any text): at most 128 characters, none of them a control character
PRODUCT_ID_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
MAX_CATEGORY_CHARS = 200
# most epochs a training request may ask for (POST /models)
MAX_EPOCHS = 1000
# a feedback review text: kept for the next training
MAX_FEEDBACK_TEXT_CHARS = 5000
