"""Public data shapes: events apps send, actions senders receive, bad rows the pipeline keeps."""
