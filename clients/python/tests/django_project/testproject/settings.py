"""A Django project as the parking app's backend has it, after the move: the Channels layer
replaced by the gateway's in one setting, no daphne, no ASGI routing."""

import os

SECRET_KEY = "django-insecure-test-project"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "parking",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["TEST_SQLITE_PATH"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Before: {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
#                      "CONFIG": {"hosts": [("127.0.0.1", 6379)]}}}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "notification_gateway.django.GatewayChannelLayer"},
}
NOTIFICATION_GATEWAY = {
    "REDIS_URL": os.environ["TEST_REDIS_URL"],
}
