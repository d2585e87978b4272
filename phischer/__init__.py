"""phischer: text a clone of a real person over SMS."""
