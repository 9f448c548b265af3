"""Host-side run control shared by the training loops (no traced code)."""
