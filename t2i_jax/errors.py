"""User-facing errors.

Anything a user can fix (a wrong path, a bad caption, a corrupt file) is raised as a
:class:`UserError` with one line that says what is wrong and what to do. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""


class UserError(Exception):
  """An error caused by input the user can fix; its message is one actionable line."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
