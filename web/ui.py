"""A tiny HTML page at / (pick a customer, see the recommendations with their images) and /media."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import abort, render_template, send_from_directory

from web import get_settings

bp = APIBlueprint("ui", __name__, tag="UI")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


@bp.get("/")
@bp.doc(
    summary="Demo page (HTML)", responses={200: {"description": "HTML page", "content": {"text/html": {}}}}
)
def index():
    return render_template("index.html")


@bp.get("/media/<path:filename>")
@bp.doc(
    summary="A product image stored under the var/ directory",
    responses={200: {"description": "image", "content": {"image/*": {}}}, 404: "Not found"},
)
def media(filename: str):
    if not filename.lower().endswith(IMAGE_SUFFIXES):
        abort(404)
    return send_from_directory(get_settings().var_dir, filename, max_age=3600)
