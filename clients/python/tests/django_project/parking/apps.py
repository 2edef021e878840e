from django.apps import AppConfig


class ParkingConfig(AppConfig):
    name = "parking"

    def ready(self) -> None:
        from . import signals  # noqa: F401 - connects the receivers
