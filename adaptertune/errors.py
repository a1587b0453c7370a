class UserError(Exception):
    """A problem the user can fix (bad spec, missing dataset, corrupt run...).

    The command line prints its message on one line and exits with status 2.
    """
