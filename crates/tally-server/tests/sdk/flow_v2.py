#!/usr/bin/env python3
"""Router flow through syfthub-sdk 0.3.1's AccountingResource (the "v2" client).

Env:
  TALLY_URL        v2 base URL (the one AccountingResource gets), e.g.
                   http://127.0.0.1:8080/syft/v2
  TALLY_ADMIN_KEY  admin API key
  TALLY_ADMIN_URL  (optional) base URL of the admin endpoints. syfthub-sdk has
                   NO admin API (users/balances are provisioned elsewhere), so
                   admin steps go through syft-accounting-sdk's AdminClient
                   (POST /user/create, POST /user/add-balance with
                   "Authorization: Bearer <key>"). Default: TALLY_URL with a
                   trailing "/v2" replaced by "/v1", else TALLY_URL itself.
  TALLY_FRESH_TOKEN_PER_TRANSFER=1  (optional) mint a new delegation token
                   before each delegated transfer instead of reusing one.

syfthub-sdk has no transfer context manager; a router using it does
create_delegated_transaction -> work -> confirm_transaction, and
cancel_transaction on failure. `charged()` below is exactly that, written with
the resource's public methods only.

Exit status 0 iff every check passed.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator

import httpx
from syft_accounting_sdk import AdminClient
from syfthub_sdk.accounting import AccountingResource
from syfthub_sdk.exceptions import AuthenticationError, SyftHubError
from syfthub_sdk.models import AccountingTransaction, CreatorType, TransactionStatus

URL = os.environ.get("TALLY_URL", "http://127.0.0.1:8080/syft/v2")
ADMIN_KEY = os.environ.get("TALLY_ADMIN_KEY", "")
ADMIN_URL = os.environ.get("TALLY_ADMIN_URL") or re.sub(r"/v2/?$", "/v1", URL)
FRESH_TOKEN = os.environ.get("TALLY_FRESH_TOKEN_PER_TRANSFER") == "1"
EPS = 0.0  # the server answers exact decimals: compare exactly

failures = 0


def check(name: str, cond: bool, detail: object = "") -> bool:
    global failures
    if cond:
        print(f"PASS {name}")
    else:
        failures += 1
        print(f"FAIL {name} {detail}")
    return cond


def close(a: float, b: float) -> bool:
    return abs(a - b) <= EPS


class UpstreamFailure(Exception):
    """Stands in for the model/data-source call failing."""


def bearer_resource(email: str, password: str) -> AccountingResource:
    """An AccountingResource whose HTTP client carries NO Basic auth.

    AccountingResource._get_client() builds httpx.Client(auth=(email, password)).
    httpx applies client-level auth *after* merging per-request headers, and
    BasicAuth.auth_flow does `request.headers["Authorization"] = "Basic ..."`,
    so the per-request `Authorization: Bearer <token>` that
    create_delegated_transaction() passes is silently overwritten and the
    server only ever sees Basic (verified against an echo server, httpx 0.28.1).
    Pre-seeding the lazily created client with one that has no `auth=` lets the
    Bearer header through unchanged. Everything else stays public API.
    """
    res = AccountingResource(url=URL, email=email, password=password)
    res._client = httpx.Client(base_url=URL, timeout=30.0)  # no auth= on purpose
    return res


def main() -> int:
    if not ADMIN_KEY:
        print("FAIL setup: TALLY_ADMIN_KEY is not set")
        return 2
    run = uuid.uuid4().hex[:10]
    payer_email = f"payer-{run}@example.com"
    router_email = f"router-{run}@example.com"
    deposit, charge_ok, charge_fail, overspend = 10.0, 1.25, 0.5, 1000.0

    # 1. admin (via v1 AdminClient; see module docstring) ------------------
    admin = AdminClient(url=ADMIN_URL, key=ADMIN_KEY)
    payer_user, payer_pw = admin.create_user(email=payer_email, organization="payers")
    router_user, router_pw = admin.create_user(email=router_email, organization="routers",
                                               password=f"router-pw-{run}")
    check("admin created payer and router", (payer_user.email, router_user.email) == (payer_email, router_email))
    check("admin.add_balance credits payer", close(admin.add_balance(email=payer_email, amount=deposit).balance, deposit))

    payer = AccountingResource(url=URL, email=payer_email, password=payer_pw)
    router = AccountingResource(url=URL, email=router_email, password=router_pw)
    router_bearer = bearer_resource(router_email, router_pw)

    me = payer.get_user()
    check("payer.get_user (GET /user, bare object)", me.email == payer_email and close(me.balance, deposit), me)
    check("payer organization", me.organization == "payers", me.organization)

    try:
        AccountingResource(url=URL, email=payer_email, password="wrong-password").get_user()
        check("wrong password refused", False, "no exception")
    except AuthenticationError as e:
        check("wrong password refused with AuthenticationError (401)", e.status_code == 401, e)

    # 2. delegation token ----------------------------------------------------
    token = payer.create_transaction_token(router_email)

    # As shipped, the SDK's BasicAuth overwrites the token's Bearer header, so the server sees
    # the router's Basic credentials and no token: nothing authorizes spending the payer's
    # money, and the server must refuse it.
    try:
        router.create_delegated_transaction(payer_email, 0.5, token)
        check("stock delegated create (token lost to BasicAuth) refused", False, "accepted")
    except SyftHubError as e:
        check("stock delegated create (token lost to BasicAuth) refused with 403", e.status_code == 403, e)
    # A token names its recipient: another user cannot use it.
    thief_email = f"thief-{run}@example.com"
    admin.create_user(email=thief_email, organization="x", password=f"thief-pw-{run}")
    try:
        bearer_resource(thief_email, f"thief-pw-{run}")._request(
            "POST", "/transactions", json={"senderEmail": payer_email, "amount": 0.5,
                                            "recipientEmail": thief_email}, token=token)
        check("token used for another recipient refused", False, "accepted")
    except SyftHubError as e:
        check("token used for another recipient refused with 403", e.status_code == 403, e)
    check("payer.create_transaction_token returns a non-empty str", bool(token), repr(token))

    def next_token() -> str:
        return payer.create_transaction_token(router_email) if FRESH_TOKEN else token

    @contextlib.contextmanager
    def charged(amount: float) -> Iterator[AccountingTransaction]:
        """Router pattern: delegated create (Bearer) -> body -> confirm (Basic);
        any exception in the body -> cancel (Basic) and re-raise."""
        tx = router_bearer.create_delegated_transaction(payer_email, amount, next_token())
        try:
            yield tx
        except BaseException:
            router.cancel_transaction(tx.id)
            raise
        try:
            router.confirm_transaction(tx.id)
        except SyftHubError:
            # e.g. a server that accepts the PENDING create but refuses the
            # confirm of an overspend: do not leave the hold behind.
            router.cancel_transaction(tx.id)
            raise

    # 3. delegated transfer, confirmed on success ---------------------------
    with charged(charge_ok) as tx:
        ok_id = tx.id
        check("delegated tx created pending", tx.status == TransactionStatus.PENDING, tx.status)
        check("delegated tx created_by recipient", tx.created_by == CreatorType.RECIPIENT, tx.created_by)
        check("delegated tx sender/recipient", (tx.sender_email, tx.recipient_email) == (payer_email, router_email), tx)
        check("delegated tx amount", close(tx.amount, charge_ok), tx.amount)
    done = router.get_transaction(ok_id)
    check("confirmed -> completed", done.status == TransactionStatus.COMPLETED, done.status)
    check("confirm resolved_by recipient", done.resolved_by == CreatorType.RECIPIENT, done.resolved_by)
    check("confirm sets resolved_at", done.resolved_at is not None)

    # 4. body raises -> cancelled -------------------------------------------
    fail_id = None
    raised = False
    try:
        with charged(charge_fail) as tx2:
            fail_id = tx2.id
            raise UpstreamFailure("model call failed")
    except UpstreamFailure:
        raised = True
    check("original exception propagates", raised)
    cancelled = router.get_transaction(fail_id)
    check("failed call -> cancelled", cancelled.status == TransactionStatus.CANCELLED, cancelled.status)
    check("cancel resolved_by recipient", cancelled.resolved_by == CreatorType.RECIPIENT, cancelled.resolved_by)

    # 5. overspend refused ---------------------------------------------------
    try:
        with charged(overspend):
            pass
        check("overspend refused", False, "no exception: the overspend went through")
    except SyftHubError as e:
        check(f"overspend refused with {type(e).__name__} [{e.status_code}]",
              e.status_code is not None and 400 <= e.status_code < 500, e)

    # the SDK's own client-side guard (no request is sent)
    try:
        router_bearer.create_delegated_transaction(payer_email, 0, token)
        check("amount 0 refused client-side", False, "no exception")
    except SyftHubError as e:
        check("amount 0 refused client-side (ValidationError)", e.status_code == 422, e)

    # 6. balances, statuses, listing ------------------------------------------
    check("payer balance = deposit - confirmed charge", close(payer.get_user().balance, deposit - charge_ok),
          payer.get_user().balance)
    check("router balance = confirmed charge", close(router.get_user().balance, charge_ok), router.get_user().balance)

    for who, res in (("payer", payer), ("router", router)):
        # page_size=1 forces several GET /transactions?skip=N&limit=1 calls and
        # the stop-on-short/empty-page rule.
        txs = res.get_transactions(page_size=1).all()
        by_id = {t.id: t for t in txs}
        check(f"{who} listing: ids unique across pages", len(by_id) == len(txs), [t.id for t in txs])
        check(f"{who} listing has the completed tx", by_id.get(ok_id) is not None
              and by_id[ok_id].status == TransactionStatus.COMPLETED, by_id.get(ok_id))
        check(f"{who} listing has the cancelled tx", by_id.get(fail_id) is not None
              and by_id[fail_id].status == TransactionStatus.CANCELLED, by_id.get(fail_id))
        check(f"{who} listing has no pending tx", not [t for t in txs if t.is_pending])
        first = res.get_transactions(page_size=20).first_page()
        check(f"{who} first_page(20) == all()", {t.id for t in first} == set(by_id), (len(first), len(by_id)))

    print(f"\n{'ALL PASSED' if failures == 0 else f'{failures} FAILED'} (flow_v2 against {URL}, admin {ADMIN_URL})")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        print(f"FAIL unexpected {type(exc).__name__}: {exc}")
        sys.exit(1)
