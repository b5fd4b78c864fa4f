using System.Numerics;
using System.Numerics.Tensors;

namespace DistributedBackprop.Network;

/// <summary>σ of a layer: a_l = σ(z_l). Softmax is allowed on the output layer only.</summary>
public enum Activation
{
    Identity,
    Sigmoid,
    Tanh,
    Relu,
    Softmax,
}

public static class Activations
{
    public static string Name(this Activation activation) => activation switch
    {
        Activation.Identity => "identity",
        Activation.Sigmoid => "sigmoid",
        Activation.Tanh => "tanh",
        Activation.Relu => "relu",
        Activation.Softmax => "softmax",
        _ => throw new ArgumentOutOfRangeException(nameof(activation)),
    };

    public static bool TryParse(string text, out Activation activation)
    {
        foreach (Activation candidate in Enum.GetValues<Activation>())
        {
            if (string.Equals(candidate.Name(), text.Trim(), StringComparison.OrdinalIgnoreCase))
            {
                activation = candidate;
                return true;
            }
        }
        activation = default;
        return false;
    }

    public static Activation Parse(string text) =>
        TryParse(text, out Activation activation)
            ? activation
            : throw new FormatException($"unknown activation '{text}' (expected identity, sigmoid, tanh, relu or softmax)");

    /// <summary>
    /// a = σ(z) for one row. Transcendental functions are applied row by row on purpose: the code path an
    /// element takes (vector body or tail) then depends only on its column, never on how many rows a
    /// batch or chunk has, so a row's activations are the same bits whoever computes them.
    /// </summary>
    public static void ForwardRow<T>(Activation activation, ReadOnlySpan<T> z, Span<T> a)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (activation)
        {
            case Activation.Identity:
                z.CopyTo(a);
                break;
            case Activation.Sigmoid:
                TensorPrimitives.Sigmoid(z, a);
                break;
            case Activation.Tanh:
                TensorPrimitives.Tanh(z, a);
                break;
            case Activation.Relu:
                TensorPrimitives.Max(z, T.Zero, a);
                break;
            case Activation.Softmax:
                // Shift by the row maximum so exp never overflows: softmax(z) = softmax(z − max z).
                T max = TensorPrimitives.Max(z);
                TensorPrimitives.Subtract(z, max, a);
                TensorPrimitives.Exp(a, a);
                TensorPrimitives.Divide(a, TensorPrimitives.Sum<T>(a), a);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(activation));
        }
    }

    /// <summary>
    /// δ = ∂J/∂z from dA = ∂J/∂a for one row (lecture: ∂J/∂z_l = ∂J/∂a_l ⊙ σ'(z_l)), in place in
    /// <paramref name="delta"/> which holds dA on entry. Uses a_l where σ' is cheapest in it:
    /// sigmoid' = a(1 − a), tanh' = 1 − a², relu' = [z &gt; 0], softmax: δ = a ⊙ (dA − ⟨dA, a⟩).
    /// <paramref name="scratch"/> is one row long.
    /// </summary>
    public static void BackwardRow<T>(Activation activation, ReadOnlySpan<T> z, ReadOnlySpan<T> a, Span<T> delta, Span<T> scratch)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (activation)
        {
            case Activation.Identity:
                break;
            case Activation.Sigmoid:
                TensorPrimitives.Subtract(T.One, a, scratch);
                TensorPrimitives.Multiply(scratch, a, scratch);
                TensorPrimitives.Multiply(delta, scratch, delta);
                break;
            case Activation.Tanh:
                TensorPrimitives.Multiply(a, a, scratch);
                TensorPrimitives.Subtract(T.One, scratch, scratch);
                TensorPrimitives.Multiply(delta, scratch, delta);
                break;
            case Activation.Relu:
                ReluMask(z, delta);
                break;
            case Activation.Softmax:
                T dot = TensorPrimitives.Dot(delta, a);
                TensorPrimitives.Subtract(delta, dot, delta);
                TensorPrimitives.Multiply(delta, a, delta);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(activation));
        }
    }

    /// <summary>delta[i] ← z[i] &gt; 0 ? delta[i] : 0 (a select, no arithmetic, so no rounding to worry about).</summary>
    private static void ReluMask<T>(ReadOnlySpan<T> z, Span<T> delta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            ReadOnlySpan<Vector<T>> zv = System.Runtime.InteropServices.MemoryMarshal.Cast<T, Vector<T>>(z);
            Span<Vector<T>> dv = System.Runtime.InteropServices.MemoryMarshal.Cast<T, Vector<T>>(delta);
            int count = Math.Min(zv.Length, dv.Length);
            for (int v = 0; v < count; v++)
            {
                dv[v] = Vector.ConditionalSelect(Vector.GreaterThan(zv[v], Vector<T>.Zero), dv[v], Vector<T>.Zero);
            }
            i = count * Vector<T>.Count;
        }
        for (; i < delta.Length; i++)
        {
            if (!(z[i] > T.Zero))
            {
                delta[i] = T.Zero;
            }
        }
    }
}
