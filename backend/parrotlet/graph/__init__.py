"""The Semantic-Variable graph IR shared by the app API, the wire format and ServeCore."""
