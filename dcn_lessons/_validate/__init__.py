"""Shape and argument checks shared by every tier (they only read .shape/.ndim/.dtype)."""
