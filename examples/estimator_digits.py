"""The scikit-learn estimator on the digits data: NumPy in, NumPy out.

Exits non-zero if a model did not learn.
Run: python examples/estimator_digits.py   (about 10 s on 2 CPU cores)
"""

import sys

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pycdeq.training import DEQClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)

for variant in ("vanilla", "skip_reg"):
    clf = DEQClassifier(variant=variant, solver="continuous", width=64, batch_size=64, lr=3e-3,
                        epochs=4, random_state=0)
    clf.fit(X_train, y_train)
    accuracy = clf.score(X_test, y_test)
    losses = ", ".join(f"{epoch['train_loss']:.2f}" for epoch in clf.history_)  # one dict per epoch
    print(f"{variant}: train loss per epoch {losses}; test accuracy {accuracy:.3f}")
    print("  class probabilities of the first test sample:", clf.predict_proba(X_test[:1]).round(2))
    if accuracy < 0.8:  # chance is 0.1
        sys.exit(f"{variant} did not learn: test accuracy {accuracy:.3f} < 0.8")
