"""What people use without writing code: the card viewer's files, the example index, the API page."""
