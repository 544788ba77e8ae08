"""
Testing an application that uses raps, with twisted.trial and
RapsTrialMixin: each test gets a private redis-server and an in-process
daemon. The mixin needs redis-py for its publisher.

Run with: python -m twisted.trial examples/test_example_trial.py
"""

from __future__ import annotations

import json

import treq
from twisted.trial import unittest

from redis_ajax_push.testing import RapsTrialMixin


class ReportTaskTests(RapsTrialMixin, unittest.TestCase):
    async def get_json(self, path):
        response = await treq.get(self.raps_url(path), persistent=False)
        return json.loads(await response.content())

    async def test_poll_shows_progress(self):
        """
        A poll returns the state that the worker stored last.
        """
        self.raps_publisher.progress("report1", progress=40)

        state = await self.get_json("/task/report1")

        self.assertEqual(state, {"status": "running", "progress": 40})

    async def test_failed_task_ends_watch(self):
        """
        A watch of a task that failed returns its failure at once.
        """
        self.raps_publisher.fail("report2", "disk full")

        state = await self.get_json("/task/report2?watch")

        self.assertEqual(
            state, {"status": "done", "failed": True, "error_message": "disk full"}
        )
