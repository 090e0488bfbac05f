"""Similarity of paired representations: CKA, minibatch CKA, subspace similarity, Procrustes.

Every function compares two representations of the *same* ``n`` inputs: ``a`` of shape
``(n, d_a)`` and ``b`` of shape ``(n, d_b)`` (row ``i`` of both belongs to input ``i``).
Inputs may be torch tensors or numpy arrays; a 1-D input is one feature per sample and an
input with more than two dimensions is flattened per sample (``(n, C, H, W) -> (n, C*H*W)``),
nothing is averaged away. All arithmetic is float64, on the device of ``a`` (CPU for devices
without float64), and the results are Python floats / pandas objects.

What the numbers mean
---------------------
- **CKA** (Kornblith et al. 2019) is a *similarity*: 1 for identical representations (and for
  representations that differ by an orthogonal map, an isotropic scaling or a translation), near
  0 for unrelated ones. It is symmetric and it is *not* invariant to general invertible linear
  maps.
- **Biased** CKA (the default, as in the paper and the STIR code) uses
  ``HSIC_0(K, L) = tr(K H L H) / (n-1)^2`` with ``H = I - 11^T/n``. With many more features
  than samples it is strongly inflated: two independent random representations can score
  0.8 or more.
- **Debiased** CKA (``debiased=True``) uses the unbiased ``HSIC_1`` of Song et al. (2012), with
  ``K~``, ``L~`` the Grams with zeroed diagonal::

      HSIC_1 = [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

  It needs ``n >= 4``; it is near 0 for independent representations and can be slightly
  negative. Computed as the Frobenius inner product of U-centred Grams (Szekely & Rizzo),
  which equals the formula above.
- :class:`MinibatchCKA` (Nguyen et al. 2021) averages ``HSIC_1`` over minibatches, separately
  for the numerator and each denominator term, and takes the ratio at the end.
- :func:`subspace_similarity` (Ramasesh et al.) is a *similarity* in ``[0, 1]``: the overlap
  ``||U_a^T U_b||_F^2 / k`` of the top-``k`` principal subspaces.
- :func:`procrustes_distance` is a *distance*: ``min_Q ||A - B Q||_F^2`` over orthogonal ``Q``
  after centring each representation and scaling it to unit Frobenius norm; in ``[0, 2]``,
  0 for identical representations (up to rotation, scale and translation).

Cost
----
Linear CKA picks the cheaper of two exact routes (``method="auto"``): the Gram route
(``n x n`` Gram matrices, for features >> samples, e.g. 500 x 38,400) or the feature route
(``d_a x d_b`` cross-covariance ``||A_c^T B_c||_F^2``, for samples >> features, e.g.
100,000 x 64; no ``n x n`` matrix is ever formed). :func:`cka_matrix` prepares each layer
once (``L_a + L_b`` centred Grams, not ``L_a * L_b``) and gets every numerator from one
matrix product.

Degenerate input (documented behaviour)
---------------------------------------
- A constant representation (all rows equal, so its HSIC with itself is 0) makes CKA 0/0: the
  result is ``NaN`` and a :class:`DegenerateRepresentationWarning` names the argument or layer.
  Never a silent 0 or 1. The same holds for subspace similarity and Procrustes distance (and
  for subspace similarity when the centred data has rank below ``k``).
- ``debiased=True`` (and :class:`MinibatchCKA`, per batch) with fewer than 4 samples raises
  ``ValueError``.
- NaN or inf in an input raises :class:`ftlens.errors.NumericalError` naming the argument.
- A different number of rows in ``a`` and ``b`` (or across the layers of a dict) raises
  ``ValueError``.
- RBF CKA with a median pairwise distance of 0 (at least half of the sample pairs identical,
  but not all) raises ``ValueError``: the bandwidth would be 0.

Layout
------
``inputs`` (input checks, centring), ``gram`` (Gram matrices, centring, HSIC), ``pairwise``
(the CKA engine: every pairwise HSIC at once), one file per measure (``cka``,
``minibatch_cka``, ``subspace``, ``procrustes``; the field's others: ``cca`` (canonical
correlations, mean CCA), ``svcca``, ``pwcca``, ``rsa``, ``mutual_knn``), ``measure`` (what a measure declares) and
``registry`` (measures by name: :func:`get_measure`, :func:`register`). A new measure is one
module here (its function and its :class:`Measure`) and one line in ``registry.BUILTIN``.
"""

from __future__ import annotations

from ftlens.errors import DegenerateRepresentationWarning
from ftlens.similarity.cka import cka_from_grams, cka_matrix, cka_per_layer, linear_cka, rbf_cka
from ftlens.similarity.gram import center_gram, gram_linear, gram_rbf, hsic
from ftlens.similarity.measure import TRANSFORMATIONS, Measure
from ftlens.similarity.minibatch_cka import MinibatchCKA
from ftlens.similarity.procrustes import procrustes_distance
from ftlens.similarity.registry import get_measure, measure_names, measures, register, unregister
from ftlens.similarity.subspace import subspace_similarity

__all__ = [
    "DegenerateRepresentationWarning",
    "gram_linear",
    "gram_rbf",
    "center_gram",
    "hsic",
    "cka_from_grams",
    "linear_cka",
    "rbf_cka",
    "cka_matrix",
    "cka_per_layer",
    "MinibatchCKA",
    "subspace_similarity",
    "procrustes_distance",
    "Measure",
    "TRANSFORMATIONS",
    "get_measure",
    "measure_names",
    "measures",
    "register",
    "unregister",
]
