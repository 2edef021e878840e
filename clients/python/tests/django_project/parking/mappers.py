"""A project's own MESSAGE_MAPPER, for messages the default mapping does not know."""

from notification_gateway import Notification


def chat_to_notification(group, message):
    return Notification("info", f"New message: {message['text']}", event="chat.message")
