"""The start-up checks of the channels' tasks (``rtgw serve`` refuses to start on a problem;
``rtgw check`` lists them): the signing secret, and each webhook's target."""

from __future__ import annotations

import logging

from gateway.channels import ChannelSet
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.sources.base import first_line
from gateway.tasks.signing import secret_key
from gateway.tasks.targets import TargetRefused, resolve

log = logging.getLogger("rtgw.tasks")


def task_problems(settings: Settings, channels: ChannelSet) -> list[str]:
    """One line per problem, naming the file, channel and key. A host that does not resolve
    now is logged, not refused: deliveries check it again, and retry."""
    webhooks = [(c, t) for c in channels for t in c.tasks if t.webhook is not None]
    if not webhooks:
        return []
    problems = []
    if settings.webhook_secret is None:
        problems.append("RTGW_WEBHOOK_SECRET must be set: channel tasks send webhooks")
    else:
        try:
            secret_key(settings.webhook_secret)
        except ConfigError as exc:
            problems.append(str(exc))
    for channel, task in webhooks:
        assert task.webhook is not None
        where = f"{channel.source}: channel {channel.name!r}: key 'tasks.{task.short_name}.webhook'"
        try:
            resolve(task.webhook, settings.webhook_allow_private)
        except TargetRefused as exc:
            problems.append(f"{where}: {exc}")
        except OSError as exc:
            log.warning("%s: %s does not resolve now (%s); deliveries will retry", where,
                        task.webhook, first_line(exc))
    return problems


def check_tasks(settings: Settings, channels: ChannelSet) -> None:
    """Raises ``ConfigError`` with the first of ``task_problems``."""
    problems = task_problems(settings, channels)
    if problems:
        raise ConfigError(problems[0])
