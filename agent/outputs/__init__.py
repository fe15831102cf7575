"""Where selected lines go and take part in the commit: the report stores (`store`)."""
