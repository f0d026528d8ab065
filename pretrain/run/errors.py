"""The one exception type for mistakes a user can fix (bad flags, config, data)."""


class UserError(Exception):
    """A user-fixable problem: CLIs print its message on one line and exit with code 2."""
