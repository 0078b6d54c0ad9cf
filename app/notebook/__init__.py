"""What the Colab notebooks call: the widgets form, the public link, and the
set-up step run right after cloning."""
