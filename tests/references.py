"""Plain per-pair references that tests of several floors share."""


def reference_ratio(a, y, pair_reduction, eps):
    """The ratio form on attention vectors ``a``, by a plain loop over the ordered pairs."""
    intra, inter, n_pos, n_neg = a.new_zeros(()), a.new_zeros(()), 0, 0
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            d = ((a[i] - a[j]) ** 2).sum()
            if y[i] == y[j]:
                intra, n_pos = intra + d, n_pos + 1
            else:
                inter, n_neg = inter + d, n_neg + 1
    if n_neg == 0:
        return 0.0 * intra
    if pair_reduction == "mean":
        intra = intra / max(n_pos, 1)
        inter = inter / n_neg
    return intra / (inter + eps)
