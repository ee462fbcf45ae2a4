"""The errors the app's two edges show people: the command line (one line, exit 2) and web requests."""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def user_errors() -> tuple[type[Exception], ...]:
    """The library errors whose one-line message is the whole story for a user: the command line's edge (app.cli)
    prints them like a CommandError. Library code raises its own; nothing below the edge translates."""
    from annotation.schema import SchemaTooNew
    from annotation.store import WorkspaceError
    from app.auth import AuthFileError
    from model.adasam import CheckpointError
    from model.backbones import BackboneError
    from model.dataset import DataError
    from model.device import DeviceError
    from model.preprocess import ImageReadError
    from model.strategies import UnknownStrategy

    paths = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)  # a path
    # given that cannot be used: the message names it
    return (WorkspaceError, SchemaTooNew, AuthFileError, BackboneError, CheckpointError, DataError, DeviceError,
            ImageReadError, UnknownStrategy, *paths)


class RequestError(ValueError):
    """A request the server refuses as given (wrong type, too large, out of bounds): nothing changed."""


class StaleView(RequestError):
    """The request answers a showing the server no longer has: the page should fetch the current one."""
