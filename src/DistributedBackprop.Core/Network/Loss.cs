namespace DistributedBackprop.Network;

/// <summary>Cost J as a mean over the n rows of a batch.</summary>
public enum Loss
{
    /// <summary>J = 1/n Σ_i ½‖a_i − y_i‖², y one-hot; ∂J/∂a = (a − y)/n (the lecture's (a₃ − y), the ½ absorbing the 2).</summary>
    MeanSquaredError,
    /// <summary>J = −1/n Σ_i log a_i[label_i] with softmax output; ∂J/∂z = (a − y)/n.</summary>
    CrossEntropy,
}

public static class Losses
{
    public static string Name(this Loss loss) => loss switch
    {
        Loss.MeanSquaredError => "mse",
        Loss.CrossEntropy => "cross_entropy",
        _ => throw new ArgumentOutOfRangeException(nameof(loss)),
    };

    public static bool TryParse(string text, out Loss loss)
    {
        switch (text.Trim().ToLowerInvariant())
        {
            case "mse":
                loss = Loss.MeanSquaredError;
                return true;
            case "cross_entropy":
            case "cross-entropy":
            case "ce":
                loss = Loss.CrossEntropy;
                return true;
            default:
                loss = default;
                return false;
        }
    }

    public static Loss Parse(string text) =>
        TryParse(text, out Loss loss) ? loss : throw new FormatException($"unknown loss '{text}' (expected mse or cross_entropy)");
}
