"""gunicorn settings for ivig-cds: ``gunicorn -c deploy/gunicorn.conf.py``.

The settings themselves live in the installed package (service/ops/gunicorn_conf.py) so that
``ivig-cds serve --production`` has them without this repository; this file only re-exports
them for the plain gunicorn command. Change behaviour through the environment variables listed
in the README's configuration reference, or through GUNICORN_CMD_ARGS.
"""

from service.ops.gunicorn_conf import *  # noqa: F401,F403 - gunicorn reads the module's names
