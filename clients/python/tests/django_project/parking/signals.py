from django.db.models.signals import post_save
from django.dispatch import receiver

from notification_gateway import CarWashCompleted
from notification_gateway.django import notify

from .models import Booking
from .notification_utils import send_ws_notification


@receiver(post_save, sender=Booking)
def booking_saved(sender, instance, created, **kwargs):
    if created:
        # Old code, untouched: goes through the channel layer.
        send_ws_notification(
            instance.lot_owner_id,
            "info",
            f"New booking at {instance.lot} by {instance.customer.username}",
        )
    elif instance.status == "washed":
        # New code: a typed event, published when the transaction commits.
        notify(
            instance.customer,
            CarWashCompleted(booking_id=instance.pk, service=instance.wash_service),
        )
