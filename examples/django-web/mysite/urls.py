"""One page, which links the stylesheet by its hashed (manifest) name."""

import os

from django.http import HttpResponse
from django.templatetags.static import static
from django.urls import path


def index(request):
    dyno = os.environ.get("DYNO", "django-web")
    return HttpResponse(
        "<!doctype html><title>django-web</title>"
        f'<link rel="stylesheet" href="{static("hello.css")}">'
        f"<h1>Hello from {dyno}</h1>\n"
    )


urlpatterns = [path("", index)]
