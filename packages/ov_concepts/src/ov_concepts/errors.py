"""Exceptions of ov_concepts. Each message names the file, row, concept or value that is wrong."""


class ConceptsError(ValueError):
    """Base class of every error ov_concepts raises on bad input, bad files or bad settings."""


class VocabularyError(ConceptsError):
    """A vocabulary file is unreadable, malformed or empty (the message names the file and line)."""


class EmbeddingError(ConceptsError):
    """Embeddings are unusable: wrong shape or dtype, NaN/inf values, zero-norm rows."""


class ManifestError(ConceptsError):
    """An output directory's manifest is missing, corrupt or belongs to a different job."""


class CheckpointError(ConceptsError):
    """A CLIP checkpoint or model config cannot be loaded into the supported architecture."""


class AssignmentError(ConceptsError):
    """Top-K assignment settings or inputs are inconsistent (k too large, dimensions differ)."""


class BalanceError(ConceptsError):
    """Balancing settings are invalid or cannot be met (target larger than the eligible images)."""
