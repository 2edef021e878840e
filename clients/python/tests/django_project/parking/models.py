from django.db import models


class Booking(models.Model):
    customer = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="bookings")
    lot_owner_id = models.BigIntegerField()
    lot = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="active")
    wash_service = models.CharField(max_length=50, blank=True)
