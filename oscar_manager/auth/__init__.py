"""Who is calling: HTTP Basic for the admin (OIDC and service tokens join later). Framework-free."""
