"""The one error the enrichment package raises."""


class EnrichError(ValueError):
    """A data file given by the user cannot be used; the message names it and says why."""
