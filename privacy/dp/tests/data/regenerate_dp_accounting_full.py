"""Recomputes, at full double precision, the `rdp_epsilon` column of
dp_accounting_reference.csv (which prints 10 significant digits) with Google's
dp_accounting 0.6.0, into dp_accounting_reference_full.csv.

    pip install dp-accounting==0.6.0
    python3 regenerate_dp_accounting_full.py   # run from this folder

Same rows and order; `rdp_epsilon` is written with 17 significant digits
(round-trips the binary64 value). dp_accounting logs warnings for fractional
orders whose series does not converge; it then skips those orders, as our
accountant does.
"""

import csv
import logging

logging.disable(logging.CRITICAL)

import dp_accounting as dpa  # noqa: E402
from dp_accounting import rdp  # noqa: E402

FIELDS = ["mechanism", "sampling_rate", "noise_multiplier", "steps_or_rho", "delta", "rdp_epsilon"]

with open("dp_accounting_reference.csv") as src, open("dp_accounting_reference_full.csv", "w") as dst:
    dst.write(",".join(FIELDS) + "\n")
    for r in csv.DictReader(src):
        acc = rdp.RdpAccountant()  # default orders, ADD_OR_REMOVE_ONE
        n = float(r["steps_or_rho"])
        if r["mechanism"] == "gaussian":
            acc.compose(dpa.GaussianDpEvent(float(r["noise_multiplier"])), int(n))
        elif r["mechanism"] == "poisson_gaussian":
            event = dpa.PoissonSampledDpEvent(
                float(r["sampling_rate"]), dpa.GaussianDpEvent(float(r["noise_multiplier"]))
            )
            acc.compose(event, int(n))
        elif r["mechanism"] == "zcdp":
            acc.compose(dpa.ZCDpEvent(n))
        else:
            raise ValueError(r["mechanism"])
        eps = float(acc.get_epsilon(float(r["delta"])))
        row = [r[f] for f in FIELDS[:-1]] + ["%.17g" % eps]
        dst.write(",".join(row) + "\n")
