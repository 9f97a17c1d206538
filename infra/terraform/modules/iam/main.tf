# The control plane's role: what `hodei serve` needs to run the aws-ec2 and aws-asg
# providers and to read its own configuration, and nothing more. Mutating actions are
# conditioned on the hodei:deployment tag wherever AWS evaluates tags for them, so one
# deployment cannot launch untagged instances, nor touch another deployment's instances
# and groups (or anything else in the account). Workers get no permission here: each
# worker pool's role may only read its own SSM parameter (modules/worker_pool).

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  ec2_arn    = "arn:${local.partition}:ec2:${local.region}"

  parameter_arn_prefix = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${var.ssm_parameter_path}"

  tags = merge(var.tags, {
    "hodei:deployment" = var.name
  })
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "control_plane" {
  name               = "${var.name}-control-plane"
  description        = "Hodei control plane ${var.name}: launches and terminates its workers"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_instance_profile" "control_plane" {
  name = "${var.name}-control-plane"
  role = aws_iam_role.control_plane.name
  tags = local.tags
}

data "aws_iam_policy_document" "control_plane" {
  # Describe* and the Auto Scaling Describe* actions support no resource-level
  # permissions and no tag conditions: AWS requires Resource "*" for them. They only read.
  statement {
    sid = "DescribeEverywhere"

    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplates",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:DescribeSpotPriceHistory",
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
    ]
    resources = ["*"]
  }

  # RunInstances creates the instance (and its volumes and interfaces) and uses other
  # resources. The instance it creates must carry our hodei:deployment tag from the start.
  statement {
    sid       = "RunTaggedInstances"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn}:${local.account_id}:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/hodei:deployment"
      values   = [var.name]
    }
  }

  # The launch template it starts from must be one of ours (the worker pools' templates
  # carry the tag).
  statement {
    sid       = "RunFromOwnLaunchTemplates"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn}:${local.account_id}:launch-template/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/hodei:deployment"
      values   = [var.name]
    }
  }

  # The other resources RunInstances touches: the image, subnets, security groups and
  # key pairs it uses, and the volumes, interfaces and spot requests it creates with the
  # instance. Tags on them are not guaranteed (public AMIs, shared subnets), so they are
  # limited to this region only; the instance statement above still demands the tag.
  statement {
    sid     = "RunInstancesUses"
    actions = ["ec2:RunInstances"]
    resources = [
      "arn:${local.partition}:ec2:${local.region}::image/*",
      "${local.ec2_arn}:${local.account_id}:subnet/*",
      "${local.ec2_arn}:${local.account_id}:security-group/*",
      "${local.ec2_arn}:${local.account_id}:network-interface/*",
      "${local.ec2_arn}:${local.account_id}:volume/*",
      "${local.ec2_arn}:${local.account_id}:key-pair/*",
      "${local.ec2_arn}:${local.account_id}:spot-instances-request/*",
    ]
  }

  # Tags are set only while launching (tag-on-create), and only with our deployment tag.
  statement {
    sid     = "TagOnLaunch"
    actions = ["ec2:CreateTags"]
    resources = [
      "${local.ec2_arn}:${local.account_id}:instance/*",
      "${local.ec2_arn}:${local.account_id}:volume/*",
      "${local.ec2_arn}:${local.account_id}:network-interface/*",
      "${local.ec2_arn}:${local.account_id}:spot-instances-request/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/hodei:deployment"
      values   = [var.name]
    }
  }

  # Terminating and inspecting an instance: only our own.
  statement {
    sid = "OwnInstances"

    actions = [
      "ec2:TerminateInstances",
      "ec2:DescribeInstanceAttribute",
    ]
    resources = ["${local.ec2_arn}:${local.account_id}:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/hodei:deployment"
      values   = [var.name]
    }
  }

  # The worker pools' Auto Scaling groups, which carry our tag: Hodei owns their
  # desired capacity and decides which instance leaves.
  statement {
    sid = "OwnAutoScalingGroups"

    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
      "autoscaling:SetInstanceProtection",
      "autoscaling:UpdateAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/hodei:deployment"
      values   = [var.name]
    }
  }

  # Instances launched with RunInstances get the worker pools' instance profiles: only
  # those roles, and only to EC2.
  statement {
    sid       = "PassWorkerRoles"
    actions   = ["iam:PassRole"]
    resources = var.worker_role_arns

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }

  # The configuration file and the secrets, read at boot.
  statement {
    sid = "ReadOwnParameters"

    actions = [
      "ssm:GetParameter",
      "ssm:GetParameters",
    ]
    resources = ["${local.parameter_arn_prefix}/*"]
  }

  # Decrypting them, and only them: SSM passes the parameter's ARN as encryption context.
  statement {
    sid       = "DecryptOwnParameters"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:PARAMETER_ARN"
      values   = ["${local.parameter_arn_prefix}/*"]
    }
  }
}

resource "aws_iam_role_policy" "control_plane" {
  name   = "hodei-control-plane"
  role   = aws_iam_role.control_plane.id
  policy = data.aws_iam_policy_document.control_plane.json
}
