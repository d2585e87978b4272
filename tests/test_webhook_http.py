"""The webhook's request checks as `phischer serve` (gunicorn) meets them over real HTTP."""

from __future__ import annotations

import requests

from tests.conftest import post_signed, serving, sign, sms_params


def test_forwarded_headers_from_loopback_are_ignored_without_trust_proxy(
    settings, personas, tmp_path
):
    # ngrok's agent or a local proxy connects from 127.0.0.1 and passes on a client's headers:
    # gunicorn believed them from there, whatever TRUST_PROXY said.
    with serving(tmp_path) as base:
        token = settings.auth_token()
        for headers, signed_url in [
            ({"X-Forwarded-Proto": "https"}, base.replace("http:", "https:") + "/sms"),
            ({"X-Forwarded-Ssl": "on"}, base.replace("http:", "https:") + "/sms"),
            ({"SCRIPT_NAME": "/clone"}, base + "/clone/sms"),  # was a 500
            ({"PATH_INFO": "/sms/status"}, base + "/sms/status"),
        ]:
            params = sms_params("hi")
            signature = sign(token, signed_url, params)
            posted = requests.post(
                base + "/sms",
                data=params,
                headers={"X-Twilio-Signature": signature, **headers},
                timeout=30,
            )
            assert posted.status_code == 403, headers
        assert post_signed(base + "/sms", token, sms_params("hi")).status_code == 200
