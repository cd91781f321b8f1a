"""Host side of the guest agent protocol."""
