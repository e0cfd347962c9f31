"""Sales domain rules without a database: pipelines and stages, deal status and value, services, commissions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from uuid import uuid4

import pytest

from domain.activities import Activity
from domain.deals import Deal, InvalidClose, LineNotFound
from domain.errors import Conflict, DomainError, NotFound
from domain.money import format_money, line_total_cents, to_cents
from domain.pipelines import Pipeline, PipelineInUse, StageNotEmpty, StageNotFound, default_pipeline_id
from domain.services import CatalogService, CategoryNotEmpty, ServiceArchived, ServiceCategory, ServiceInUse

ORG = uuid4()
TODAY = dt.date(2026, 3, 15)


def a_pipeline() -> Pipeline:
    return Pipeline.create(ORG, "Enterprise", [("Discovery", 20), ("Offer", 60), ("Negotiation", 80)])


def a_deal(pipeline: Pipeline | None = None, value: int | None = None) -> Deal:
    return Deal.create(ORG, client_id=uuid4(), title="ACME", pipeline=pipeline or a_pipeline(), stage_id=None,
                       currency="EUR", value_cents=value)


def a_service(price_cents: int = 100000) -> CatalogService:
    return CatalogService(org_id=ORG, fields={"name": "Web design", "unit_price_cents": price_cents, "vat_rate": "22"})


# -- pipelines ---------------------------------------------------------------------------------------------
def test_default_pipeline_is_deterministic_per_organization():
    # given two organizations / when their default pipelines are made twice / then ids are stable and distinct
    a, b = Pipeline.create_default(ORG), Pipeline.create_default(ORG)
    assert a.id == b.id == default_pipeline_id(ORG) and a.stage_ids() == b.stage_ids()
    assert [s["name"] for s in a.stages] == ["New", "Qualified", "Proposal", "Negotiation"]
    assert Pipeline.create_default(uuid4()).id != a.id


def test_stages_can_be_added_renamed_and_reordered():
    p = a_pipeline()
    won = p.add_stage("Contract", 90, position=1)
    assert [s["name"] for s in p.stages] == ["Discovery", "Contract", "Offer", "Negotiation"]
    p.update_stage(won, "Signed", 95)
    assert p.stages[1] == {"id": str(won), "name": "Signed", "probability": 95}
    p.reorder_stages(list(reversed(p.stage_ids())))
    assert [s["name"] for s in p.stages] == ["Negotiation", "Offer", "Signed", "Discovery"]


def test_reorder_must_list_every_stage_once():
    p = a_pipeline()
    with pytest.raises(DomainError) as e:
        p.reorder_stages(p.stage_ids()[:2])
    assert e.value.field == "stage_ids"


def test_duplicate_stage_name_and_bad_probability_are_refused():
    p = a_pipeline()
    with pytest.raises(Conflict):
        p.add_stage("offer", 10)
    with pytest.raises(DomainError) as e:
        p.add_stage("New", 120)
    assert e.value.field == "probability"


def test_only_an_empty_stage_can_be_removed():
    # given a stage that holds deals / when removing it / then refused; once empty it goes
    p = a_pipeline()
    stage = p.stage_ids()[1]
    with pytest.raises(StageNotEmpty) as e:
        p.remove_stage(stage, deals_in_stage=2)
    assert e.value.field == "stage_id"
    p.remove_stage(stage, deals_in_stage=0)
    assert stage not in p.stage_ids()
    with pytest.raises(StageNotFound):
        p.remove_stage(stage, deals_in_stage=0)


def test_pipeline_with_open_deals_cannot_be_deleted():
    p = a_pipeline()
    with pytest.raises(PipelineInUse):
        p.delete_checked(open_deals=1)
    p.delete_checked(open_deals=0)
    assert p.deleted


# -- deals: stage ----------------------------------------------------------------------------------------
def test_deal_starts_in_first_stage_and_moves_only_within_a_pipeline_it_names():
    p, other = a_pipeline(), a_pipeline()
    d = a_deal(p)
    assert (d.pipeline_id, d.stage_id) == (p.id, p.first_stage_id())
    d.move_to(p, p.stage_ids()[2])
    assert d.stage_id == p.stage_ids()[2]
    with pytest.raises(StageNotFound):
        d.move_to(p, other.stage_ids()[0])     # a stage of another pipeline is not a stage of this one
    d.move_to(other, other.stage_ids()[1])     # changing pipeline names the new pipeline explicitly
    assert (d.pipeline_id, d.stage_id) == (other.id, other.stage_ids()[1])


def test_deal_cannot_be_created_in_a_foreign_stage():
    with pytest.raises(StageNotFound):
        Deal.create(ORG, client_id=None, title="x", pipeline=a_pipeline(), stage_id=uuid4(), currency="EUR")


# -- deals: status ---------------------------------------------------------------------------------------
def test_winning_records_today_as_close_date_and_reopening_clears_it():
    d = a_deal()
    d.set_status("accepted", today=TODAY)
    assert (d.status, d.close_date) == ("accepted", TODAY)
    d.set_status("open", today=TODAY)
    assert (d.status, d.close_date, d.lost_reason) == ("open", None, None)


def test_losing_keeps_the_reason_and_an_earlier_close_date():
    d = a_deal()
    d.set_status("rejected", today=TODAY, reason="too expensive", close_date=dt.date(2026, 2, 1))
    assert (d.status, d.close_date, d.lost_reason) == ("rejected", dt.date(2026, 2, 1), "too expensive")


def test_close_date_in_the_future_and_reason_on_a_win_are_refused():
    d = a_deal()
    with pytest.raises(InvalidClose) as e:
        d.set_status("accepted", today=TODAY, close_date=TODAY + dt.timedelta(days=1))
    assert e.value.field == "close_date"
    with pytest.raises(DomainError) as e:
        d.set_status("accepted", today=TODAY, reason="why")
    assert e.value.field == "reason"
    with pytest.raises(DomainError):
        d.set_status("won", today=TODAY)


def test_setting_the_same_status_twice_records_nothing():
    d = a_deal()
    d.set_status("accepted", today=TODAY)
    before = len(d.collect_events())
    d.set_status("accepted", today=TODAY)
    assert before > 0 and d.collect_events() == []


# -- deals: value ----------------------------------------------------------------------------------------
def test_value_is_the_sum_of_service_lines_with_discounts():
    d = a_deal()
    d.add_service(a_service(100000), Decimal(3), discount_percent=Decimal(10))     # 3 x 1000 x 0.9 = 2700
    line = d.add_service(a_service(33333), Decimal("1.5"))                         # 1.5 x 333.33 = 499.995 -> 500.00
    assert d.value_cents == 270000 + 50000
    d.update_service(line, quantity=Decimal(1))
    assert d.value_cents == 270000 + 33333
    d.remove_service(line)
    assert d.value_cents == 270000
    with pytest.raises(LineNotFound):
        d.remove_service(line)


def test_an_explicit_value_wins_until_cleared():
    d = a_deal(value=4500000)
    d.add_service(a_service(100000), Decimal(1))
    assert d.value_cents == 4500000
    d.set_value(None)
    assert d.value_cents == 100000 and d.explicit_value_cents is None


def test_archived_service_cannot_be_added_but_stays_on_deals():
    s = a_service()
    d = a_deal()
    d.add_service(s, Decimal(1))
    s.archive()
    with pytest.raises(ServiceArchived):
        d.add_service(s, Decimal(1))
    assert len(d.lines) == 1


def test_used_service_and_non_empty_category_cannot_be_deleted():
    with pytest.raises(ServiceInUse):
        a_service().delete_unused(deals_using=1)
    with pytest.raises(CategoryNotEmpty):
        ServiceCategory(org_id=ORG, name="Web", description=None).delete_empty(services_in_category=3)


def test_commission_is_percent_or_amount():
    d = a_deal()
    user = uuid4()
    d.set_commission(user, percent=Decimal("12.5"))
    assert d.commissions[str(user)]["percent"] == "12.5"
    with pytest.raises(DomainError):
        d.set_commission(user, percent=Decimal(1), amount_cents=100)
    d.set_commission(user, amount_cents=50000)
    assert d.commissions[str(user)] == {"user_id": str(user), "percent": None, "amount_cents": 50000}
    d.remove_commission(user)
    with pytest.raises(NotFound):
        d.remove_commission(user)


def test_money_is_exact():
    assert to_cents(Decimal("0.1"), field="v") + to_cents(Decimal("0.2"), field="v") == 30
    assert line_total_cents("3", 999, "33.3333") == 1998
    assert format_money(12743000, "EUR") == "€127,430.00"
    with pytest.raises(DomainError):
        to_cents(Decimal(-1), field="value")


def test_activity_needs_a_client_or_a_deal():
    with pytest.raises(DomainError) as e:
        Activity.log(ORG, "call", client_id=None, deal_id=None, user_id=None, occurred_at=dt.datetime.now(dt.timezone.utc))
    assert e.value.field == "client_id"
    a = Activity.log(ORG, "meeting", client_id=uuid4(), deal_id=None, user_id=None,
                     occurred_at=dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc), details={"location": "Milano"})
    a.update({"details": {"location": "Roma"}})
    assert a.details == {"location": "Roma"}


def test_deal_replays_to_the_same_state():
    # given a deal with history / when rebuilt from its own events / then the state is identical
    p = a_pipeline()
    d = a_deal(p)
    d.add_service(a_service(), Decimal(2), discount_percent=Decimal(5))
    d.move_to(p, p.stage_ids()[1])
    d.set_status("rejected", today=TODAY, reason="budget")
    events = d.collect_events()
    copy = None
    for ev in events:
        copy = ev.mutate(copy)
    assert (copy.value_cents, copy.stage_id, copy.status, copy.lost_reason, copy.lines) == (
        d.value_cents, d.stage_id, d.status, d.lost_reason, d.lines)
