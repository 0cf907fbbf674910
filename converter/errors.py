"""The one exception the converter raises for bad input: its message is the whole story, one line."""


class ConversionError(Exception):
    """A checkpoint or a request the converter refuses; str(error) is shown to the user as is."""
