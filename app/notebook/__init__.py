"""What the Colab notebooks call: the set-up step run right after cloning
(setup), Google Drive (drive), the widgets form (widgets), the public link
(tunnel), the app notebook's quiet output (session), and the repository
URL rewrite behind ``python -m app notebooks`` (repo)."""
