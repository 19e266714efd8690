"""The scikit-learn estimator on the digits data: NumPy in, NumPy out.

Run: python examples/estimator_digits.py
"""

import os

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pycdeq.training import DEQClassifier

QUICK = os.environ.get("PYCDEQ_EXAMPLE_QUICK") == "1"

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)

for variant in ("vanilla", "skip_reg"):
    clf = DEQClassifier(variant=variant, solver="continuous", width=64, batch_size=64, lr=3e-3,
                        epochs=1 if QUICK else 4, random_state=0)
    clf.fit(X_train, y_train)
    last = clf.history_[-1]
    print(f"{variant:9s} test accuracy {clf.score(X_test, y_test):.3f}   "
          f"history keys: {sorted(last)[:4]}...")
    print("  class probabilities of the first test sample:", clf.predict_proba(X_test[:1]).round(2))
