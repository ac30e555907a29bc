"""All SQL lives here, one module per aggregate; services call these, handlers never do."""
