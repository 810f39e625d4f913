"""core-plays-consumer: follows the OpenAudio Core chain into the plays table."""

__version__ = "0.1.0"
